"""Who chooses the next action: the policies (``registry`` names them, builds them and loads a saved one), and
the one place an agent is put together (``assembly``)."""
