package config

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmagent.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Defaults, then the file, then the flags.
func TestLoadLayers(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	c, err := Load(missing, false, Overrides{})
	if err != nil {
		t.Fatalf("missing file at the default path: %v", err)
	}
	if c.Listen != ":7443" || c.Root != "/" || c.LogLevel != "info" || c.TLS.Cert != "/etc/meshvm/agent/server.pem" {
		t.Errorf("defaults: got %+v", c)
	}
	if _, err := Load(missing, true, Overrides{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file named explicitly: got %v, want ErrNotExist", err)
	}
	p := writeConfig(t, "version: 1\nlisten: '[::1]:8443'\nlog_level: debug\nroot: /srv/vm\n")
	c, err = Load(p, true, Overrides{})
	if err != nil || c.Listen != "[::1]:8443" || c.LogLevel != "debug" || c.Root != "/srv/vm" {
		t.Errorf("file: got %+v, %v", c, err)
	}
	c, err = Load(p, true, Overrides{Listen: "127.0.0.1:9443", LogLevel: "warn", Root: "/tmp/sandbox"})
	if err != nil || c.Listen != "127.0.0.1:9443" || c.LogLevel != "warn" || c.Root != "/tmp/sandbox" {
		t.Errorf("flags over the file: got %+v, %v", c, err)
	}
	if c.Limits != Default().Limits {
		t.Errorf("limits: got %+v, want the defaults", c.Limits)
	}
}

// Each invalid field is named with what it wants.
func TestLoadErrorsNameTheFix(t *testing.T) {
	for body, want := range map[string]string{
		"version: 2\n":                               "version 2 is not supported",
		"version: 1\nlisten: 7443\n":                 `listen "7443"`,
		"version: 1\nlisten: '::1:7443'\n":           "want host:port",
		"version: 1\nroot: srv\n":                    "must be an absolute path",
		"version: 1\nlog_level: loud\n":              "want debug, info, warn or error",
		"version: 1\nlisten_on: ':7443'\n":           "see packaging/vmagent.yaml",
		"version: 1\nlimits:\n  max_deliveries: x\n": "fix the file",
	} {
		_, err := Load(writeConfig(t, body), true, Overrides{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", body, err, want)
		}
	}
	// The parser's error stays in the chain.
	_, err := Load(writeConfig(t, "version: 1\nlisten: nowhere\n"), true, Overrides{})
	var addrErr *net.AddrError
	if !errors.As(err, &addrErr) {
		t.Errorf("got %v, want a *net.AddrError in the chain", err)
	}
}

// ReadTLS names the file that is missing and the fix.
func TestReadTLSNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	c := Default()
	c.TLS = TLS{Cert: filepath.Join(dir, "server.pem"), Key: filepath.Join(dir, "server-key.pem"), ClientCA: filepath.Join(dir, "client-ca.pem")}
	for _, p := range []string{c.TLS.Cert, c.TLS.ClientCA} {
		if err := os.WriteFile(p, []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, _, _, err := c.ReadTLS()
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "private key") || !strings.Contains(err.Error(), "hostctl vm onboard") {
		t.Errorf("got %v, want the private key named, with the fix", err)
	}
	if err := os.WriteFile(c.TLS.Key, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key, ca, err := c.ReadTLS()
	if err != nil || string(cert) != "pem" || string(key) != "key" || string(ca) != "pem" {
		t.Errorf("got %q %q %q %v", cert, key, ca, err)
	}
}
