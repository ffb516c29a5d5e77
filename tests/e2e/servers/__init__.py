"""The servers under test, behind one interface that the scenarios use (see Adapter in
base.py): rpserver.Rpserver and nginx.Nginx."""
