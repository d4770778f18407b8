package cli

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/reason"
)

// notAdvice are the literals under pkg/ that name a command without
// advising it, each with why.
var notAdvice = map[string]string{
	`/mesh/fleetinstall/image.go: "hostctl fleet install"`: "the controller image's history names the command that built it",
}

// Advice names hostctl's commands, and only this package words it: the
// packages under pkg/ (which the agent and a controller link too) report
// reasons. A string literal in their code that names a command of this
// tree ("run hostctl up", "hostctl vm onboard vm1", "run hostctl again") fails here.
func TestNoAdviceBelowTheCLI(t *testing.T) {
	var names []string
	for _, c := range New().Commands() {
		names = append(names, regexp.QuoteMeta(c.Name()))
	}
	if len(names) < 5 {
		t.Fatalf("the command tree has %d commands: the check would pass on nothing", len(names))
	}
	advice := regexp.MustCompile(`\bhostctl (` + strings.Join(names, "|") + `)\b|\brun hostctl\b|\bhostctl again\b`)
	root := filepath.Join("..", "..", "..", "pkg")
	files := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		files++
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			where := filepath.ToSlash(strings.TrimPrefix(path, root)) + ": " + lit.Value
			if s, err := strconv.Unquote(lit.Value); err == nil && advice.MatchString(s) && notAdvice[where] == "" {
				t.Errorf("%s: advice %q: return a reason (pkg/reason) and word it in advice.go", fset.Position(lit.Pos()), s)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("read %d files under %s: the check would pass on nothing", files, root)
	}
}

// Every reason pkg/reason declares has its advice here, and the table
// advises on no reason that is not declared.
func TestEveryReasonHasAdvice(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join("..", "..", "..", "pkg", "reason", "reason.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	declared := map[reason.Reason]bool{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Reason" || len(v.Values) != 1 {
				continue
			}
			s, _ := strconv.Unquote(v.Values[0].(*ast.BasicLit).Value)
			declared[reason.Reason(s)] = true
		}
	}
	if len(declared) < 20 {
		t.Fatalf("found %d reasons in pkg/reason: the check would pass on nothing", len(declared))
	}
	for r := range declared {
		if _, ok := advices[r]; !ok && r != reason.None {
			t.Errorf("reason %s has no advice in advice.go", r)
		}
	}
	for r := range advices {
		if !declared[r] {
			t.Errorf("advice.go advises on %s, which pkg/reason does not declare", r)
		}
	}
}
