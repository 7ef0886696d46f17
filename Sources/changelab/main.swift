import ChangelabCLI

await Changelab.main()
