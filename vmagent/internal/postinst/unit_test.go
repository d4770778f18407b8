package postinst

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The istio unit starts after cloud-init's stage that rewrites /etc/hosts
// (so prepare's restored block survives the boot), without an ordering cycle
// against cloud-init's later stages. systemd-analyze checks the boot
// transaction over stand-ins ordered as cloud-init's own units are.
func TestUnitOrdersAfterCloudInitWithoutCycle(t *testing.T) {
	unit := Unit("/usr/local/bin/vmagent")
	var after []string
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(l, "After="); ok {
			after = append(after, strings.Fields(v)...)
		}
	}
	for _, want := range []string{"network-online.target", "cloud-init.service", "cloud-init-network.service"} {
		if !strings.Contains(" "+strings.Join(after, " ")+" ", " "+want+" ") {
			t.Errorf("After= %q lacks %s", after, want)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze to check the boot transaction")
	}
	if out := bootTransaction(t, unit); strings.Contains(out, "ordering cycle") {
		t.Errorf("ordering cycle in the boot transaction:\n%s", out)
	}
	// The check can fail: ordered after cloud-final it would be a cycle.
	cyclic := strings.Replace(unit, "After=network-online.target", "After=cloud-final.service network-online.target", 1)
	if out := bootTransaction(t, cyclic); !strings.Contains(out, "ordering cycle") {
		t.Errorf("control: After=cloud-final.service gave no ordering cycle:\n%s", out)
	}
}

// bootTransaction runs systemd-analyze verify on multi-user.target with the
// unit and stand-ins for cloud-init's units (their orderings as shipped).
func bootTransaction(t *testing.T, istioUnit string) string {
	dir := t.TempDir()
	units := map[string]string{
		"istio.service":              istioUnit,
		"multi-user.target":          "[Unit]\nDescription=Multi-User System\n",
		"network-online.target":      "[Unit]\nDescription=Network is Online\n",
		"cloud-init.service":         "[Unit]\nBefore=network-online.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
		"cloud-init-network.service": "[Unit]\nBefore=network-online.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
		"cloud-config.service":       "[Unit]\nAfter=network-online.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
		"cloud-final.service":        "[Unit]\nAfter=network-online.target cloud-config.service multi-user.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
	}
	for name, text := range units {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wants := filepath.Join(dir, "multi-user.target.wants")
	os.Mkdir(wants, 0o755)
	for _, u := range []string{"istio.service", "cloud-init.service", "cloud-init-network.service", "cloud-config.service", "cloud-final.service"} {
		os.Symlink("../"+u, filepath.Join(wants, u))
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "multi-user.target"))
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	out, _ := cmd.CombinedOutput() // it exits 0 on a cycle; the text says it
	return string(out)
}
