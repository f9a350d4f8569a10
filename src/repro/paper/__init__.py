"""The generated paper: macros of the setup as run, and the latexmk build (`repro paper ...`)."""
