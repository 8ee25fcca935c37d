from pool_api.cli import main

main()
