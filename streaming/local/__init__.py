"""Local tooling: the emulators, the job as a child process, the replay feed, the demo and the
local-runner patches. Never imported by the job on Dataflow."""
