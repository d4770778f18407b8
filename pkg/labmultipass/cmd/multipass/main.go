// Command multipass is the lab's Multipass stand-in (pkg/labmultipass):
// tests put it first on PATH as "multipass".
package main

import (
	"os"

	"github.com/meshvm/meshvm/pkg/labmultipass"
)

func main() {
	os.Exit(labmultipass.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
