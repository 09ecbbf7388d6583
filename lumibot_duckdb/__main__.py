from lumibot_duckdb.cli import main

main(prog_name="lumibot-duckdb")
