package agentbin

import (
	"bytes"
	"debug/elf"
	"testing"
)

// What make build embeds must be what Agent hands out: the static vmagent
// for the architecture its name says (a mixed-up copy would install an agent
// that cannot run on the VM).
func TestEmbeddedAgentsMatchTheirArch(t *testing.T) {
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	entries, err := files.ReadDir("vmagent")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"README.md": true, Name("amd64"): true, Name("arm64"): true}
	for _, e := range entries {
		if !known[e.Name()] {
			t.Errorf("vmagent/%s: not an agent hostctl looks up (want %s or %s)", e.Name(), Name("amd64"), Name("arm64"))
		}
	}
	for arch, want := range machines {
		b, ok := Agent(arch)
		if !ok {
			t.Logf("%s: not embedded (make build embeds it)", arch)
			continue
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: embedded agent is not ELF: %v", arch, err)
		}
		if f.Machine != want {
			t.Errorf("%s: embedded agent is built for %s", arch, f.Machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s: embedded agent is dynamically linked", arch)
			}
		}
	}
	if _, ok := Agent("riscv64"); ok {
		t.Error("an agent for riscv64 was found where none is embedded")
	}
}
