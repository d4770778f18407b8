// Command multipass is the lab's Multipass stand-in (lab/multipass):
// tests put it first on PATH as "multipass".
package main

import (
	"os"

	"github.com/meshvm/meshvm/lab/multipass"
)

func main() {
	os.Exit(multipass.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
