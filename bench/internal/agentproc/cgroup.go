package agentproc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MemoryCgroup holds an agent under a memory limit as its systemd unit's
// MemoryMax does: past it the kernel reclaims, then OOM-kills. It works on
// cgroup v2 (memory.max) and on v1's memory controller.
type MemoryCgroup struct {
	dir string
	v2  bool
}

// NewMemoryCgroup makes a cgroup named name limited to limit bytes, or
// says why it cannot (not root, no writable memory controller).
func NewMemoryCgroup(name string, limit int64) (*MemoryCgroup, error) {
	for _, c := range []MemoryCgroup{{dir: "/sys/fs/cgroup/" + name, v2: true}, {dir: "/sys/fs/cgroup/memory/" + name}} {
		parent := filepath.Dir(c.dir)
		if c.v2 {
			if _, err := os.Stat(filepath.Join(parent, "cgroup.controllers")); err != nil {
				continue
			}
		} else if _, err := os.Stat(filepath.Join(parent, "memory.limit_in_bytes")); err != nil {
			continue
		}
		if err := os.Mkdir(c.dir, 0o755); err != nil && !os.IsExist(err) {
			return nil, fmt.Errorf("memory cgroup %s: %w", c.dir, err)
		}
		file := "memory.limit_in_bytes"
		if c.v2 {
			file = "memory.max"
		}
		if err := os.WriteFile(filepath.Join(c.dir, file), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
			os.Remove(c.dir)
			return nil, fmt.Errorf("memory cgroup %s: set the limit: %w", c.dir, err)
		}
		return &c, nil
	}
	return nil, fmt.Errorf("no writable memory cgroup controller under /sys/fs/cgroup")
}

// Add moves pid into the cgroup; its children follow it.
func (c *MemoryCgroup) Add(pid int) error {
	return os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}

// PeakMiB is the most memory the cgroup has charged (its processes and
// their page cache).
func (c *MemoryCgroup) PeakMiB() (float64, error) {
	file := "memory.max_usage_in_bytes"
	if c.v2 {
		file = "memory.peak"
	}
	n, err := readInt(filepath.Join(c.dir, file))
	return float64(n) / (1 << 20), err
}

// OOMKills is how many processes the kernel killed for the limit.
func (c *MemoryCgroup) OOMKills() (int64, error) {
	file := "memory.oom_control"
	if c.v2 {
		file = "memory.events"
	}
	data, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, nil
}

// Remove deletes the cgroup once its processes have exited.
func (c *MemoryCgroup) Remove() error { return os.Remove(c.dir) }

func readInt(p string) (int64, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

// FDs is how many file descriptors pid holds.
func FDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// Children lists pid's child processes.
func Children(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out, nil
}
