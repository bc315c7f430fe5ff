from focuslab.cli.main import main

main()
