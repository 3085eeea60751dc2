"""Submissions: formats and safe readers, validation against a split, writers of demo submissions."""
