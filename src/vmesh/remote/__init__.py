"""Programs vmesh runs on a mesh host (over SSH, ``python3 -``), standard library only: :mod:`vmesh.ssh` sends
them as text."""
