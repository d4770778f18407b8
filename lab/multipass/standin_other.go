//go:build !linux

package multipass

import (
	"fmt"
	"io"
)

// Main fails: the stand-in's VMs are Linux namespaces.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "the multipass stand-in runs lab VMs (systemd-nspawn): Linux only; install Multipass (https://multipass.run)")
	return 2
}
