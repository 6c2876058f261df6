package api

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	apidoc "github.com/cordon-dev/cordon/api"
)

// The OpenAPI document (api/openapi.json) and the server must agree: the
// same paths, the same methods on each, and every status the server
// answered during this package's tests documented for its operation.

type openapiDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

type openapiOp struct {
	OperationID string                     `json:"operationId"`
	Responses   map[string]json.RawMessage `json:"responses"`
}

func loadDoc(t testing.TB) (openapiDoc, map[string]map[string]openapiOp) {
	t.Helper()
	var doc openapiDoc
	if err := json.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	ops := map[string]map[string]openapiOp{}
	for path, item := range doc.Paths {
		ops[path] = map[string]openapiOp{}
		for key, raw := range item {
			switch key {
			case "get", "post", "delete", "put", "patch", "head", "options":
			default:
				continue // parameters, summary…
			}
			var op openapiOp
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", key, path, err)
			}
			ops[path][strings.ToUpper(key)] = op
		}
	}
	return doc, ops
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc, ops := loadDoc(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	s := newServer(nil, ServeOptions{}, "")
	served := map[string]bool{}
	for _, rt := range s.routes() {
		served[rt.pattern] = true
		docOps, ok := ops[rt.pattern]
		if !ok {
			t.Errorf("route %s is not in api/openapi.json", rt.pattern)
			continue
		}
		var methods, documented []string
		for m := range rt.methods {
			methods = append(methods, m)
		}
		for m, op := range docOps {
			documented = append(documented, m)
			if op.OperationID == "" {
				t.Errorf("%s %s: no operationId", m, rt.pattern)
			}
			if _, ok := op.Responses[successStatus(op.Responses)]; !ok {
				t.Errorf("%s %s: no 200 response (nor a 202 for an operation that only accepts)", m, rt.pattern)
			}
			for code := range op.Responses {
				if n, err := strconv.Atoi(code); err != nil || n < 100 || n > 599 {
					t.Errorf("%s %s: response %q is not a status code", m, rt.pattern, code)
				}
			}
		}
		sort.Strings(methods)
		sort.Strings(documented)
		if !slices.Equal(methods, documented) {
			t.Errorf("%s: the server answers %v, the document lists %v", rt.pattern, methods, documented)
		}
	}
	for path := range ops {
		if !served[path] {
			t.Errorf("api/openapi.json documents %s, which the server does not serve", path)
		}
	}
	// The server serves the document itself.
	srv := serve(t)
	req, _ := http.NewRequest("GET", srv.base+"/api/v1/openapi.json", nil)
	authJSON(req, srv.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || got["openapi"] == nil {
		t.Fatalf("GET /api/v1/openapi.json: %v %v", resp.Status, err)
	}
}

// observed collects (route, method, status) of every request the servers of
// this package's tests answered.
var observed = struct {
	sync.Mutex
	m map[[3]string]int
}{m: map[[3]string]int{}}

func TestMain(m *testing.M) {
	testObserve = func(route, method string, status int) {
		observed.Lock()
		observed.m[[3]string{route, method, strconv.Itoa(status)}]++
		observed.Unlock()
	}
	code := m.Run()
	if code == 0 {
		if err := checkObserved(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: statuses answered but not in api/openapi.json:\n"+err.Error())
			code = 1
		}
	}
	if f := flag.Lookup("test.run"); code == 0 && f != nil && f.Value.String() == "" && !testing.Short() {
		if err := checkCoverage(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: operations of api/openapi.json no test got a 200 from:\n"+err.Error())
			code = 1
		}
	}
	os.Exit(code)
}

// checkObserved reports statuses the server answered that the document
// does not list for the operation. A 404 on an unknown path and a 405 for a
// method the document does not list are the generic answers.
func checkObserved() error {
	var doc openapiDoc
	if err := json.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		return err
	}
	var missing []string
	observed.Lock()
	defer observed.Unlock()
	for k := range observed.m {
		route, method, status := k[0], k[1], k[2]
		if route == "other" && status == "404" {
			continue
		}
		if method == http.MethodHead {
			method = http.MethodGet
		}
		item, ok := doc.Paths[route]
		if !ok {
			missing = append(missing, fmt.Sprintf("%s %s: route not documented", method, route))
			continue
		}
		raw, ok := item[strings.ToLower(method)]
		if !ok {
			if status != "405" {
				missing = append(missing, fmt.Sprintf("%s %s answered %s: method not documented", method, route, status))
			}
			continue
		}
		var op openapiOp
		if err := json.Unmarshal(raw, &op); err != nil {
			return err
		}
		if _, ok := op.Responses[status]; !ok {
			missing = append(missing, fmt.Sprintf("%s %s answered %s", method, route, status))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		return fmt.Errorf("  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

// checkCoverage reports operations of the document that no test got a 200
// from (only meaningful when the whole package ran).
func checkCoverage() error {
	var doc openapiDoc
	if err := json.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		return err
	}
	var missing []string
	observed.Lock()
	defer observed.Unlock()
	for path, item := range doc.Paths {
		for m := range item {
			switch m {
			case "get", "post", "delete":
			default:
				continue
			}
			var op openapiOp
			if err := json.Unmarshal(item[m], &op); err != nil {
				return err
			}
			if observed.m[[3]string{path, strings.ToUpper(m), successStatus(op.Responses)}] == 0 {
				missing = append(missing, strings.ToUpper(m)+" "+path)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		return fmt.Errorf("  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

// successStatus is the status an operation answers when it works: 200, or
// 202 for one that only accepts (the IC interface's call).
func successStatus(responses map[string]json.RawMessage) string {
	if _, ok := responses["200"]; !ok {
		if _, ok := responses["202"]; ok {
			return "202"
		}
	}
	return "200"
}
