// Package packaging_test checks that what the package installs agrees with
// what vmagent expects: the config file, the unit's command line and the
// paths of the files.
package packaging_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/vmagent/config"
)

func TestShippedConfigIsTheDefault(t *testing.T) {
	got, err := config.Load("vmagent.yaml", true, config.Overrides{})
	if err != nil {
		t.Fatalf("load vmagent.yaml: got %v, want it to load", err)
	}
	if diff := cmp.Diff(config.Default(), got); diff != "" {
		t.Errorf("vmagent.yaml differs from config.Default() (-want +got):\n%s", diff)
	}
}

func TestUnit(t *testing.T) {
	unit := readUnit(t, "vmagent.service")
	def := config.Default()
	tests := []struct {
		name, key, want string
	}{
		{"runs the installed agent on the packaged config", "ExecStart", fmt.Sprintf("%s serve --config %s", def.AgentPath, config.DefaultPath)},
		{"waits for the agent's READY", "Type", "notify"},
		{"restarts after a crash", "Restart", "on-failure"},
		{"leaves /etc writable", "ProtectSystem", "yes"},
		{"starts at boot", "WantedBy", "multi-user.target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unit[tt.key]; got != tt.want {
				t.Errorf("%s: got %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

// nfpmConfig is the part of nfpm.yaml this test reads.
type nfpmConfig struct {
	Contents []struct {
		Src      string `json:"src"`
		Dst      string `json:"dst"`
		Type     string `json:"type"`
		FileInfo struct {
			Mode uint32 `json:"mode"`
		} `json:"file_info"`
	} `json:"contents"`
	Scripts map[string]string `json:"scripts"`
}

func TestPackageContents(t *testing.T) {
	data, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c nfpmConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("parse nfpm.yaml: %v", err)
	}
	type entry struct {
		Src, Type string
		Mode      uint32
	}
	got := map[string]entry{}
	for _, f := range c.Contents {
		got[f.Dst] = entry{f.Src, f.Type, f.FileInfo.Mode}
	}
	def := config.Default()
	want := map[string]entry{
		def.AgentPath:                         {"bin/vmagent-linux-${ARCH}", "", 0o755},
		"/lib/systemd/system/vmagent.service": {"packaging/vmagent.service", "", 0o644},
		config.DefaultPath:                    {"packaging/vmagent.yaml", "config|noreplace", 0o644},
		"/etc/meshvm":                         {"", "dir", 0o755},
		// Where hostctl writes the key: only root may look inside.
		filepath.Dir(def.TLS.Key): {"", "dir", 0o700},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nfpm.yaml contents (-want +got):\n%s", diff)
	}
	// Sources are relative to the repository root, where make runs nfpm.
	for _, src := range append([]string{want[config.DefaultPath].Src, want["/lib/systemd/system/vmagent.service"].Src},
		c.Scripts["postinstall"], c.Scripts["preremove"]) {
		fi, err := os.Stat(filepath.Join("..", src))
		if err != nil {
			t.Errorf("package source: %v", err)
			continue
		}
		if strings.HasSuffix(src, ".sh") && fi.Mode()&0o111 == 0 {
			t.Errorf("%s: got mode %v, want it executable", src, fi.Mode())
		}
	}
}

// readUnit returns a unit file's last value for each key.
func readUnit(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not key=value", path, line)
		}
		m[k] = v
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}
