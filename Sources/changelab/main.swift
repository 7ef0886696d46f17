import ChangelabCLI

await Changelab.runMain()
