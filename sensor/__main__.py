from sensor.cli import main

main(prog_name="mayfly")
