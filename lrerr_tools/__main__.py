from lrerr_tools.cli import main

main()
