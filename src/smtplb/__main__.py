from smtplb.cli import main

main()
