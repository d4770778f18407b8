package proxyimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// tarOf is a tar stream holding files (path -> content), mode 0755.
func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, c := range files {
		tw.WriteHeader(&tar.Header{Name: p, Mode: 0o755, Size: int64(len(c)), Typeflag: tar.TypeReg})
		tw.Write([]byte(c))
	}
	tw.Close()
	return buf.Bytes()
}

// writeDeb writes a .deb as dpkg lays it out: an ar archive of
// debian-binary, control.tar.gz and data.tar with the given compression.
func writeDeb(t *testing.T, arch, compression string, files map[string]string) string {
	t.Helper()
	data := tarOf(t, files)
	var z bytes.Buffer
	switch compression {
	case "xz":
		w, _ := xz.NewWriter(&z)
		w.Write(data)
		w.Close()
	case "zst":
		w, _ := zstd.NewWriter(&z)
		w.Write(data)
		w.Close()
	}
	var ctl bytes.Buffer
	gz := gzip.NewWriter(&ctl)
	gz.Write(tarOf(t, map[string]string{"./control": "Package: istio-sidecar\nVersion: 1.31.0\nArchitecture: " + arch + "\nMaintainer: test\nDescription: test\n"}))
	gz.Close()
	var ar bytes.Buffer
	ar.WriteString("!<arch>\n")
	for _, m := range []struct {
		name string
		body []byte
	}{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl.Bytes()}, {"data.tar." + compression, z.Bytes()}} {
		fmt.Fprintf(&ar, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", m.name, 0, 0, 0, "100644", len(m.body))
		ar.Write(m.body)
		if len(m.body)%2 == 1 {
			ar.WriteByte('\n')
		}
	}
	p := filepath.Join(t.TempDir(), "istio-sidecar.deb")
	if err := os.WriteFile(p, ar.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var sidecarFiles = map[string]string{
	"./usr/local/bin/envoy":                           "envoy",
	"./usr/local/bin/pilot-agent":                     "pilot-agent",
	"./var/lib/istio/envoy/envoy_bootstrap_tmpl.json": "{}",
	"./usr/local/bin/istio-start.sh":                  "#!/bin/sh",
}

func TestFromDeb(t *testing.T) {
	for _, compression := range []string{"xz", "zst"} {
		t.Run(compression, func(t *testing.T) {
			deb := writeDeb(t, "amd64", compression, sidecarFiles)
			// dpkg itself must read what the test wrote, or the test proves nothing.
			if _, err := exec.LookPath("dpkg-deb"); err == nil {
				if out, err := exec.Command("dpkg-deb", "-c", deb).CombinedOutput(); err != nil || !strings.Contains(string(out), "./usr/local/bin/pilot-agent") {
					t.Fatalf("dpkg-deb -c: %v\n%s", err, out)
				}
			}
			cache := t.TempDir()
			s, err := FromDeb(cache, deb, "amd64")
			if err != nil {
				t.Fatal(err)
			}
			for file, want := range map[string]string{"envoy": "envoy", "pilot-agent": "pilot-agent", "envoy_bootstrap_tmpl.json": "{}"} {
				if b, err := os.ReadFile(s.Path(file)); err != nil || string(b) != want {
					t.Errorf("%s: %q, %v", file, b, err)
				}
			}
			again, err := FromDeb(cache, deb, "amd64")
			if err != nil || !again.Cached || again.Dir != s.Dir {
				t.Errorf("second read: %+v, %v; want the cached files", again, err)
			}
		})
	}
}

func TestFromDebErrorsNameTheFix(t *testing.T) {
	cache := t.TempDir()
	if _, err := FromDeb(cache, writeDeb(t, "amd64", "xz", sidecarFiles), "arm64"); err == nil || !strings.Contains(err.Error(), "is for amd64, the VM is arm64") ||
		!strings.Contains(err.Error(), "leave istio.sidecarDeb empty") {
		t.Errorf("wrong architecture: %v", err)
	}
	partial := map[string]string{"./usr/local/bin/envoy": "envoy"}
	if _, err := FromDeb(cache, writeDeb(t, "arm64", "xz", partial), "arm64"); err == nil || !strings.Contains(err.Error(), "lacks /usr/local/bin/pilot-agent") {
		t.Errorf("package without pilot-agent: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.deb")
	os.WriteFile(junk, []byte("hello"), 0o644)
	if _, err := FromDeb(cache, junk, "amd64"); err == nil || !strings.Contains(err.Error(), "is it a .deb?") {
		t.Errorf("junk: %v", err)
	}
	if _, err := FromDeb(cache, filepath.Join(t.TempDir(), "missing.deb"), "amd64"); err == nil || !strings.Contains(err.Error(), "istio.sidecarDeb") {
		t.Errorf("missing file: %v", err)
	}
}
