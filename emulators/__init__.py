"""Local stand-ins for the cloud services the app talks to; test and demo tools, never deployed."""
