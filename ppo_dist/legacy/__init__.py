"""The legacy notebook API: code written for ``trl`` <= 0.11's ``PPOTrainer`` runs on ppo_dist with
only its imports changed (``from ppo_dist import PPOConfig, PPOTrainer, ...``).

:mod:`.trainer` (``PPOTrainer``), :mod:`.config` (the legacy ``PPOConfig``, mapped onto ppo_dist's
config), :mod:`.models` (the value-head model classes, ``create_reference_model``), :mod:`.seq2seq`
(encoder-decoder policies) and :mod:`.core` (``trl.core``'s helpers). It translates the legacy API and
nothing else: models, optimizer and update come from the service's own wiring
(:func:`ppo_dist.rl.learner.build_learner`).
"""
