// Package agentbin carries the static vmagent for each VM architecture,
// and fleet mode's controller for each node architecture, inside hostctl,
// so one downloaded hostctl is all a user needs. make build copies them
// into vmagent/ and controller/ before it builds hostctl; a hostctl built
// with plain go build holds none and finds them on disk instead.
package agentbin

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"io/fs"
)

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

// controllerFiles is files, but for a test.
var controllerFiles fs.ReadFileFS = files

// ControllerName is the file name of the static controller for a GOARCH.
func ControllerName(arch string) string { return "meshvm-controller-linux-" + arch }

// Controller returns the embedded controller for arch, or false when this
// hostctl was built without it. make build embeds it gzipped: 38 MiB of
// controller-runtime and client-go per architecture would otherwise more
// than double hostctl's size.
func Controller(arch string) ([]byte, bool) {
	gz, err := controllerFiles.ReadFile("controller/" + ControllerName(arch) + ".gz")
	if err != nil {
		return nil, false
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err == nil {
		var b []byte
		if b, err = io.ReadAll(zr); err == nil {
			return b, true
		}
	}
	// make build wrote it: a hostctl that cannot read it is broken, not its user's input.
	panic(fmt.Sprintf("hostctl's embedded %s is corrupt (%v): rebuild hostctl with make build", ControllerName(arch), err))
}
