"""Adapters that expose this project's estimators to other training frameworks.

``integrations.verl``: registers every preset in verl's policy-loss and advantage registries as
``upge_<preset>`` (import it before verl builds its workers).

``integrations.trl``: ``UpgeGRPOTrainer``, TRL's ``GRPOTrainer`` training any preset (hybrids with
demonstrations from a dataset column), planned once per optimizer step.
"""
