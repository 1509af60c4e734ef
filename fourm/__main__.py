from fourm.cli import main

main()
