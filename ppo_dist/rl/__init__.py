"""The PPO service: a step's experience (:mod:`.experience`) sampled by a rollout engine
(:mod:`.engines`) and scored by the roles (:mod:`.roles`), the update (:mod:`.update`), their wiring
(:mod:`.learner`) and the loop (:mod:`.trainer`). See ``docs/ARCHITECTURE.md`` for one step's data flow."""
