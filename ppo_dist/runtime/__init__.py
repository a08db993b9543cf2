"""What every training loop runs on: processes and collectives (:mod:`.distributed`), DeepSpeed ZeRO
(:mod:`.zero`), checkpoints (:mod:`.checkpoint`), guards and stop signals (:mod:`.guards`), and
experiment tracking (:mod:`.tracking`)."""
