// Package agentbin carries the static vmagent for each VM architecture,
// and fleet mode's controller for each node architecture, inside hostctl,
// so one downloaded hostctl is all a user needs. make build copies them
// into vmagent/ and controller/ before it builds hostctl; a hostctl built
// with plain go build holds none and finds them on disk instead.
package agentbin

import "embed"

//go:embed vmagent controller
var files embed.FS

// Name is the file name of the static vmagent for a GOARCH.
func Name(arch string) string { return "vmagent-linux-" + arch }

// Agent returns the embedded vmagent for arch, or false when this hostctl
// was built without it.
func Agent(arch string) ([]byte, bool) {
	b, err := files.ReadFile("vmagent/" + Name(arch))
	return b, err == nil
}

// ControllerName is the file name of the static controller for a GOARCH.
func ControllerName(arch string) string { return "meshvm-controller-linux-" + arch }

// Controller returns the embedded controller for arch, or false when this
// hostctl was built without it.
func Controller(arch string) ([]byte, bool) {
	b, err := files.ReadFile("controller/" + ControllerName(arch))
	return b, err == nil
}
