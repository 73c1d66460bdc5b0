"""One patient's biology: declared states, parameters and drugs, and the equations (the bottom of the data path)."""
