package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vm rm of a machine that is already gone, with the cluster unreachable:
// its files go, and the token it could not revoke is named with the way on,
// not passed over in silence.
func TestVMRmWithoutMachineOrCluster(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "meshvm.yaml")
	body := "version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: " + filepath.Join(dir, "no-such-kubeconfig") +
		"\nmachines: ssh\nvms:\n- {name: vm1, address: 10.0.0.7, user: ubuntu}\n"
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	files := filepath.Join(dir, ".meshvm", "vms", "ghost", "files")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "--config", cfgPath, "vm", "rm", "ghost")
	if err != nil {
		t.Fatalf("vm rm: %v\n%s", err, out)
	}
	for _, want := range []string{"vm rm: no machine ghost", "vm rm: token of ghost not revoked (", "run hostctl vm rm ghost again once the cluster answers"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Dir(files)); !os.IsNotExist(err) {
		t.Errorf("the VM's state is left: %v", err)
	}
}
