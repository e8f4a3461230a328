from hwq.cli import main

main()
