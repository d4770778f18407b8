// Package agentbin carries the static vmagent for each VM architecture
// inside hostctl, so one downloaded hostctl is all a user needs. make build
// copies the agents into vmagent/ before it builds hostctl; a hostctl built
// with plain go build holds none and finds the agent on disk instead.
package agentbin

import "embed"

//go:embed vmagent
var files embed.FS

// Name is the file name of the static vmagent for a GOARCH.
func Name(arch string) string { return "vmagent-linux-" + arch }

// Agent returns the embedded vmagent for arch, or false when this hostctl
// was built without it.
func Agent(arch string) ([]byte, bool) {
	b, err := files.ReadFile("vmagent/" + Name(arch))
	return b, err == nil
}
