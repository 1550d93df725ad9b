"""The guide's screen's widgets: each renders what it is given and posts messages; screens act."""
