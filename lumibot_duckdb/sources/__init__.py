"""Drop-in replacements for Lumibot's backtesting data sources, one module per vendor."""
