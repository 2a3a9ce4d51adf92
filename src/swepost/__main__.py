from swepost.cli import main

main()
