//go:build linux

package multipass

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	labinstance "github.com/meshvm/meshvm/lab/instance"
	"github.com/meshvm/meshvm/lab/labtest"
)

// standin builds the stand-in and returns a function running it as the
// multipass CLI against a daemon directory of its own.
func standin(t *testing.T) (run func(stdin string, args ...string) (stdout, stderr string, code int), bin, dir string) {
	t.Helper()
	labtest.RequireVMs(t)
	work := t.TempDir()
	bin = filepath.Join(work, "multipass")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/multipass").CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in: %v\n%s", err, out)
	}
	dir = filepath.Join(work, "daemon")
	os.Mkdir(dir, 0o700)
	t.Setenv(DirEnv, dir)
	run = func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		// A client's environment as a service or CI gives it: no SHELL, no
		// HOME; and one variable that must not reach the instance.
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), DirEnv + "=" + dir, "MESHVM_CALLER_ONLY=1"}
		var out, errOut bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errOut
		err := cmd.Run()
		code := 0
		if exit, ok := err.(*exec.ExitError); ok {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), code
	}
	return run, bin, dir
}

type infoJSON struct {
	Errors []any `json:"errors"`
	Info   map[string]struct {
		State    string                       `json:"state"`
		IPv4     []string                     `json:"ipv4"`
		Release  string                       `json:"release"`
		CPUCount string                       `json:"cpu_count"`
		Memory   map[string]int64             `json:"memory"`
		Disks    map[string]map[string]string `json:"disks"`
	} `json:"info"`
}

// TestStandinOnLabVM drives one instance through launch, exec, transfer,
// suspend, stop, start, delete, recover and purge, checking each against
// what Multipass does; and a launch killed mid-way, left Starting until
// start waits it out.
func TestStandinOnLabVM(t *testing.T) {
	mp, bin, dir := standin(t)
	// One at a time: delete fails whole when one name does not exist.
	t.Cleanup(func() { mp("", "delete", "--purge", "sm1"); mp("", "delete", "--purge", "sm2") })
	info := func(name string) (infoJSON, int) {
		t.Helper()
		out, stderr, code := mp("", "info", name, "--format", "json")
		var i infoJSON
		if code == 0 {
			if err := json.Unmarshal([]byte(out), &i); err != nil {
				t.Fatalf("info %s: %v\n%s", name, err, out)
			}
		} else {
			t.Logf("info %s: exit %d: %s", name, code, stderr)
		}
		return i, code
	}

	start := time.Now()
	out, stderr, code := mp("", "launch", "22.04", "--name", "sm1", "--cpus", "2", "--memory", "2G", "--disk", "10G")
	if code != 0 || out != "Launched: sm1\n" {
		t.Fatalf("launch: exit %d\n%s%s", code, out, stderr)
	}
	t.Logf("launch with cloud-init took %s", time.Since(start).Round(time.Second))
	i, _ := info("sm1")
	sm1 := i.Info["sm1"]
	if sm1.State != "Running" || len(sm1.IPv4) == 0 || !strings.HasPrefix(sm1.IPv4[0], fmt.Sprintf("10.%d.", labinstance.Of(dir).Octet())) || sm1.CPUCount == "" ||
		sm1.Memory["total"] == 0 || sm1.Disks["sda1"]["total"] == "" || !strings.Contains(sm1.Release, "Debian") {
		t.Errorf("info of a running instance: got %+v", sm1)
	}

	// exec: the ubuntu user, sudo without a password, exit status and stderr passed through.
	if out, stderr, code := mp("", "exec", "sm1", "--", "sh", "-c", "id -un; sudo -n id -u; echo oops >&2; exit 7"); out != "ubuntu\n0\n" || stderr != "oops\n" || code != 7 {
		t.Errorf("exec: got %q %q exit %d, want ubuntu then 0, oops on stderr, exit 7", out, stderr, code)
	}
	if out, _, code := mp("", "exec", "sm1", "--no-map-working-directory", "--", "sudo", "--", "sh", "-c", "echo \"$1\"", "_", "it's a b"); out != "it's a b\n" || code != 0 {
		t.Errorf("exec with quoting: got %q exit %d", out, code)
	}
	if out, _, _ := mp("", "exec", "sm1", "-n", "--", "pwd"); out != "/home/ubuntu\n" {
		t.Errorf("exec runs from %q, want the ubuntu user's home", out)
	}
	// sshd's environment for the user, none of the client's.
	if out, _, _ := mp("", "exec", "sm1", "-n", "--", "sh", "-c", `echo "$SHELL $HOME $USER [$MESHVM_CALLER_ONLY]"`); out != "/bin/bash /home/ubuntu ubuntu []\n" {
		t.Errorf("exec environment: got %q, want the ubuntu user's shell, home and name and nothing of the caller's", out)
	}

	// transfer: stdin and a file, written as ubuntu, modes as SFTP leaves them.
	if _, stderr, code := mp("hello", "transfer", "-", "sm1:/tmp/in.txt"); code != 0 {
		t.Errorf("transfer from stdin: exit %d %s", code, stderr)
	}
	src := filepath.Join(t.TempDir(), "local.bin")
	os.WriteFile(src, []byte("data"), 0o600)
	if _, stderr, code := mp("", "transfer", src, "sm1:/tmp/"); code != 0 {
		t.Errorf("transfer of a file: exit %d %s", code, stderr)
	}
	out, _, _ = mp("", "exec", "sm1", "-n", "--", "stat", "-c", "%U %a %s %n", "/tmp/in.txt", "/tmp/local.bin")
	if out != "ubuntu 644 5 /tmp/in.txt\nubuntu 600 4 /tmp/local.bin\n" {
		t.Errorf("transferred files: got %q", out)
	}
	// A relative target is under the user's home, which (unlike /tmp,
	// emptied at boot) keeps it across a restart.
	if _, stderr, code := mp("kept", "transfer", "-", "sm1:kept.txt"); code != 0 {
		t.Errorf("transfer to a relative path: exit %d %s", code, stderr)
	}
	if _, stderr, code := mp("x", "transfer", "-", "sm1:/etc/forbidden"); code != 2 || !strings.Contains(stderr, "cannot open remote file /etc/forbidden") {
		t.Errorf("transfer where ubuntu may not write: exit %d %q", code, stderr)
	}
	if _, stderr, code := mp("x", "transfer", "-", "sm1:/no/such/dir/f"); code != 2 || !strings.Contains(stderr, "remote target does not exist") {
		t.Errorf("transfer into a missing directory: exit %d %q", code, stderr)
	}

	// cloud-init ran with Multipass's config: it manages /etc/hosts.
	out, _, _ = mp("", "exec", "sm1", "-n", "--", "cat", "/etc/hosts")
	if !strings.Contains(out, "manage_etc_hosts") {
		t.Errorf("/etc/hosts is not cloud-init's:\n%s", out)
	}

	// suspend freezes the VM; start resumes it with its processes intact.
	mp("", "exec", "sm1", "-n", "--", "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $! > /tmp/sleeper")
	if _, stderr, code := mp("", "suspend", "sm1"); code != 0 {
		t.Fatalf("suspend: exit %d %s", code, stderr)
	}
	if i, _ := info("sm1"); i.Info["sm1"].State != "Suspended" || len(i.Info["sm1"].IPv4) != 0 {
		t.Errorf("after suspend: got %+v, want Suspended with no runtime information", i.Info["sm1"])
	}
	if _, stderr, code := mp("", "stop", "sm1"); code != 2 || !strings.Contains(stderr, "Cannot shut down suspended instance sm1.") {
		t.Errorf("stop of a suspended instance: exit %d %q", code, stderr)
	}
	if _, stderr, code := mp("", "start", "sm1"); code != 0 {
		t.Fatalf("start after suspend: exit %d %s", code, stderr)
	}
	if out, _, code := mp("", "exec", "sm1", "-n", "--", "sh", "-c", "kill -0 $(cat /tmp/sleeper) && echo alive"); out != "alive\n" || code != 0 {
		t.Errorf("a process from before suspend: got %q exit %d, want it alive", out, code)
	}

	// stop: Stopped with the runtime fields empty; exec starts it again.
	if _, stderr, code := mp("", "stop", "sm1"); code != 0 {
		t.Fatalf("stop: exit %d %s", code, stderr)
	}
	if i, _ := info("sm1"); i.Info["sm1"].State != "Stopped" || i.Info["sm1"].CPUCount != "" || len(i.Info["sm1"].IPv4) != 0 || len(i.Info["sm1"].Memory) != 0 {
		t.Errorf("info of a stopped instance: got %+v, want Stopped and empty fields", i.Info["sm1"])
	}
	if _, stderr, code := mp("x", "transfer", "-", "sm1:/tmp/x"); code != 2 || stderr != "transfer failed: instance \"sm1\" is not running\n" {
		t.Errorf("transfer to a stopped instance: exit %d %q", code, stderr)
	}
	// exec on a stopped instance starts it (the client's retry); its disk was kept.
	if out, stderr, code := mp("", "exec", "sm1", "-n", "--", "cat", "/home/ubuntu/kept.txt"); code != 0 || out != "kept" {
		t.Errorf("exec on a stopped instance: exit %d, %q %s; want it started and the file kept", code, out, stderr)
	}
	if i, _ := info("sm1"); i.Info["sm1"].State != "Running" {
		t.Errorf("exec did not start the stopped instance: %+v", i.Info["sm1"])
	}
	out, _, _ = mp("", "exec", "sm1", "-n", "--", "sudo", "grep", "-c", "Running module update_etc_hosts", "/var/log/cloud-init.log")
	if n, _ := strconv.Atoi(strings.TrimSpace(out)); n < 2 {
		t.Errorf("cloud-init's update_etc_hosts ran %q times, want once per boot (2)", strings.TrimSpace(out))
	}

	// delete keeps the instance, Deleted, until purged; start refuses it.
	if _, stderr, code := mp("", "delete", "sm1"); code != 0 {
		t.Fatalf("delete: exit %d %s", code, stderr)
	}
	if i, code := info("sm1"); code != 0 || i.Info["sm1"].State != "Deleted" {
		t.Errorf("info of a deleted instance: exit %d %+v", code, i.Info["sm1"])
	}
	if _, stderr, code := mp("", "start", "sm1"); code != 2 || !strings.Contains(stderr, "Instance 'sm1' is deleted. Use 'recover' to recover it or 'purge'") {
		t.Errorf("start of a deleted instance: exit %d %q", code, stderr)
	}
	if _, _, code := mp("", "recover", "sm1"); code != 0 {
		t.Errorf("recover: exit %d", code)
	}
	if i, _ := info("sm1"); i.Info["sm1"].State != "Stopped" {
		t.Errorf("after recover: %+v, want Stopped", i.Info["sm1"])
	}
	if _, _, code := mp("", "delete", "--purge", "sm1"); code != 0 {
		t.Errorf("delete --purge: exit %d", code)
	}
	if _, stderr, code := mp("", "info", "sm1", "--format", "json"); code != 2 || stderr != "info failed: instance \"sm1\" does not exist\n" {
		t.Errorf("info after purge: exit %d %q", code, stderr)
	}

	// A launch killed mid-way leaves the instance Starting; start waits
	// for it (booting it if needed) and it runs.
	launch := exec.Command(bin, "launch", "--name", "sm2")
	if err := launch.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if i, code := info("sm2"); code == 0 && i.Info["sm2"].State == "Starting" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sm2 never reported Starting")
		}
	}
	launch.Process.Signal(syscall.SIGKILL)
	launch.Wait()
	if i, _ := info("sm2"); i.Info["sm2"].State != "Starting" {
		t.Errorf("after the launch was killed: %+v, want Starting", i.Info["sm2"])
	}
	if _, stderr, code := mp("", "stop", "sm2"); code != 2 || !strings.Contains(stderr, "while starting") {
		t.Errorf("stop while starting: exit %d %q", code, stderr)
	}
	if _, stderr, code := mp("", "start", "sm2"); code != 0 {
		t.Fatalf("start of a Starting instance: exit %d %s", code, stderr)
	}
	if _, stderr, code := mp("", "exec", "sm2", "-n", "--", "test", "-e", "/var/lib/cloud/instance/boot-finished"); code != 0 {
		t.Errorf("sm2 after start: cloud-init has not finished (exit %d %s)", code, stderr)
	}
	if i, _ := info("sm2"); i.Info["sm2"].State != "Running" {
		t.Errorf("after start: %+v, want Running", i.Info["sm2"])
	}
}
