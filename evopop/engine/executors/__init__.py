"""Executors carry the controller's jobs out: the interface (`base`) and the one that runs them in
this process (`local`). Ray's executor has a room of its own (`evopop.engine.ray`)."""
