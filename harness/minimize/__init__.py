"""Minimized reproducers: replay a crash's history with its original grouping and cut it down (ddmin with a
dependency closure) while the same crash title still reproduces on a fresh target."""
