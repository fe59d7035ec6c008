from flux.cli import main

main()
