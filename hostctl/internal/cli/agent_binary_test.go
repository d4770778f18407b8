package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/hostctl/internal/agentbin"
)

// The agent up installs comes from, in order: the directory given
// explicitly, the one built into hostctl, then the directories make build
// writes to. An explicit directory without the agent is an error, never a
// silent fall back.
func TestFindAgentOrder(t *testing.T) {
	name := agentbin.Name("arm64")
	dirWith := func(content string) string {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	explicit, beside, checkout, empty := dirWith("explicit"), dirWith("beside"), dirWith("checkout"), t.TempDir()
	embedded := func(arch string) ([]byte, bool) { return []byte("embedded " + arch), arch == "arm64" }
	none := func(string) ([]byte, bool) { return nil, false }

	for _, c := range []struct {
		name     string
		explicit string
		embedded func(string) ([]byte, bool)
		dirs     []string
		want     string
	}{
		{"explicit wins over embedded", explicit, embedded, []string{beside}, "explicit"},
		{"embedded wins over disk", "", embedded, []string{beside, checkout}, "embedded arm64"},
		{"without embedded, beside the binary", "", none, []string{beside, checkout}, "beside"},
		{"then the checkout's bin", "", none, []string{empty, checkout}, "checkout"},
	} {
		got, err := findAgent("arm64", c.explicit, c.embedded, c.dirs)
		if err != nil || string(got) != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}

	_, err := findAgent("arm64", empty, embedded, []string{beside})
	if err == nil || !strings.Contains(err.Error(), empty) || !strings.Contains(err.Error(), "--vmagent-dir") {
		t.Errorf("explicit directory without the agent: got %v, want an error naming it", err)
	}
	_, err = findAgent("arm64", "", none, []string{empty})
	if err == nil || !strings.Contains(err.Error(), "make build") || !strings.Contains(err.Error(), "--vmagent-dir") || !strings.Contains(err.Error(), empty) {
		t.Errorf("no agent anywhere: got %v, want make build, --vmagent-dir and the places searched named", err)
	}
}

// --vmagent-dir is agent.dir (MESHVM_AGENT_DIR), made absolute against the
// working directory as given on the command line.
func TestVMAgentDirFlag(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	p := filepath.Join(dir, "meshvm.yaml")
	if err := os.WriteFile(p, []byte("version: 1\nagent:\n  dir: from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, filepath.Join(dir, "from-file")},
		{[]string{"--vmagent-dir", "bin"}, filepath.Join(dir, "bin")},
	} {
		out, err := run(t, append([]string{"--config", p, "config", "show", "-o", "json"}, c.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Agent struct{ Dir string } }
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if got.Agent.Dir != c.want {
			t.Errorf("%v: agent.dir %q, want %q", c.args, got.Agent.Dir, c.want)
		}
	}
}
