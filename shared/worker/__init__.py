"""The deployed worker: wiring (runtime), the pipeline that carries out the planner's steps, the
router that holds each deployment's breaker and quota, and the poison recorder."""
