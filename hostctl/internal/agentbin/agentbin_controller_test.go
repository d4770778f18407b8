package agentbin

import (
	"bytes"
	"compress/gzip"
	"testing"
	"testing/fstest"
)

// The embedded controller is gzipped by make build; Controller hands back
// the binary itself, and says false when hostctl was built without it.
func TestControllerGunzipped(t *testing.T) {
	saved := controllerFiles
	defer func() { controllerFiles = saved }()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("\x7fELF controller"))
	zw.Close()
	controllerFiles = fstest.MapFS{"controller/meshvm-controller-linux-arm64.gz": {Data: gz.Bytes()}}
	if b, ok := Controller("arm64"); !ok || string(b) != "\x7fELF controller" {
		t.Errorf("arm64: %q, %v; want the binary", b, ok)
	}
	if _, ok := Controller("amd64"); ok {
		t.Error("amd64, not embedded: found")
	}
}
