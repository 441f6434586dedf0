"""Spins forever: the wall-clock deadline must kill it."""

print("looping", flush=True)
while True:
    pass
