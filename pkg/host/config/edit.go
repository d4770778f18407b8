package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	yaml3 "go.yaml.in/yaml/v3"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// AddVM lists vm under vms in the config file at path, keeping the rest of
// the file (comments included) as it is. A file that lists no VMs gets the
// ones in effect (current) first, so adding never drops the default VM. It
// reports false when the VM was already listed.
func AddVM(path string, vm VM, current []VM) (bool, error) {
	return edit(path, func(doc *yaml3.Node) (bool, error) {
		seq := vmsNode(doc)
		if seq == nil {
			seq = &yaml3.Node{Kind: yaml3.SequenceNode}
			for _, v := range current {
				seq.Content = append(seq.Content, vmNode(v))
			}
			doc.Content = append(doc.Content, &yaml3.Node{Kind: yaml3.ScalarNode, Value: "vms"}, seq)
		}
		if indexVM(seq, vm.Name) >= 0 {
			return false, nil
		}
		seq.Content = append(seq.Content, vmNode(vm))
		return true, nil
	})
}

// RemoveVM takes the named VM off the list. The last VM stays (a config
// needs one): it reports false then, as when the VM was not listed.
func RemoveVM(path, name string) (bool, error) {
	return edit(path, func(doc *yaml3.Node) (bool, error) {
		seq := vmsNode(doc)
		if seq == nil {
			return false, nil
		}
		i := indexVM(seq, name)
		if i < 0 || len(seq.Content) == 1 {
			return false, nil
		}
		seq.Content = append(seq.Content[:i], seq.Content[i+1:]...)
		return true, nil
	})
}

// edit applies change to the file's top-level mapping and, when it changed
// something, writes the file atomically and checks it still loads.
func edit(path string, change func(doc *yaml3.Node) (bool, error)) (bool, error) {
	data, err := os.ReadFile(path)
	mode := os.FileMode(0o644)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		data = []byte("version: 1\n")
	case err != nil:
		return false, fmt.Errorf("read config: %w", err)
	default:
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	}
	var root yaml3.Node
	if err := yaml3.Unmarshal(data, &root); err != nil {
		return false, fmt.Errorf("config %s: %w: fix the YAML first", path, err)
	}
	if root.Kind == 0 {
		root = yaml3.Node{Kind: yaml3.DocumentNode, Content: []*yaml3.Node{{Kind: yaml3.MappingNode}}}
	}
	if root.Kind != yaml3.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml3.MappingNode {
		return false, fmt.Errorf("config %s is not a YAML mapping: fix it first", path)
	}
	changed, err := change(root.Content[0])
	if err != nil || !changed {
		return false, err
	}
	var out bytes.Buffer
	enc := yaml3.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return false, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	dir, err := fsroot.New(filepath.Dir(abs))
	if err != nil {
		return false, err
	}
	if err := dir.WriteBytes("/"+filepath.Base(abs), out.Bytes(), fsroot.WriteOptions{Mode: mode, UID: os.Getuid(), GID: os.Getgid()}); err != nil {
		return false, fmt.Errorf("write config: %w", err)
	}
	if _, err := Load(path, true, func(string) string { return "" }); err != nil {
		return true, fmt.Errorf("the edited config does not load (%w): fix %s by hand", err, path)
	}
	return true, nil
}

func vmsNode(doc *yaml3.Node) *yaml3.Node {
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "vms" && doc.Content[i+1].Kind == yaml3.SequenceNode {
			return doc.Content[i+1]
		}
	}
	return nil
}

func indexVM(seq *yaml3.Node, name string) int {
	for i, item := range seq.Content {
		for j := 0; j+1 < len(item.Content); j += 2 {
			if item.Content[j].Value == "name" && item.Content[j+1].Value == name {
				return i
			}
		}
	}
	return -1
}

// vmNode writes the fields that are set, name first.
func vmNode(vm VM) *yaml3.Node {
	n := &yaml3.Node{Kind: yaml3.MappingNode}
	add := func(k, v string) {
		if v != "" && v != "0" {
			n.Content = append(n.Content, &yaml3.Node{Kind: yaml3.ScalarNode, Value: k}, &yaml3.Node{Kind: yaml3.ScalarNode, Value: v})
		}
	}
	add("name", vm.Name)
	add("image", vm.Image)
	add("cpus", strconv.Itoa(vm.CPUs))
	add("memory", vm.Memory)
	add("disk", vm.Disk)
	add("address", vm.Address)
	add("user", vm.User)
	add("key", vm.Key)
	if vm.App != nil {
		add("app", strconv.FormatBool(*vm.App))
	}
	return n
}
