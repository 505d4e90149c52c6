"""The Ray shells around the one-process engine: Ray Train (`train`), Ray Tune (`tune`), Ray Jobs
(`submit`) and the job specs they run (`spec`). The only layer below serving that imports Ray."""
