"""Pure rules of Runyard: no I/O, no framework imports."""
