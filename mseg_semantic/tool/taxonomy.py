"""mseg-taxonomy: list taxonomies, show a dataset's mapping, validate user files, export the mapping.

    mseg-taxonomy list [--role train|test|raw|universal]
    mseg-taxonomy show DATASET [--kind universal|naive]
    mseg-taxonomy sets DATASET          (each set with its members' record shares and why each was kept or dropped)
    mseg-taxonomy validate FILE [FILE ...]
    mseg-taxonomy export --format csv|md [-o FILE] [--kind universal|naive]
    mseg-taxonomy summary
    mseg-taxonomy import-mseg MSEG_API_DATA_DIR -o OUT_DIR
    mseg-taxonomy --taxonomy-file new.tsv propose [NAME] [--out mydata.tsv] [--universal NAME]
Global: --taxonomy-file FILE (repeatable) adds user taxonomies before the command runs.
Exit codes: 0 ok, 1 propose: some rows need a human decision (marked DECIDE), 2 bad input (message or validation
report on stderr).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from mseg_semantic.atomic import atomic_write_text
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import (
    DEFAULT_TEST_DATASETS,
    DEFAULT_TRAIN_DATASETS,
    IGNORE_INDEX,
    UNRELABELED_TRAIN_DATASETS,
    Catalog,
    NaiveTaxonomyConverter,
    TaxonomyConverter,
    TaxonomyFileError,
)
from mseg_semantic.taxonomy.files import ROLES, ValidationReport
from mseg_semantic.taxonomy.validation import validate_taxonomies
from mseg_semantic.tool.cli import add_debug_flag, run_tool


class CliError(UserError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = add_debug_flag(argparse.ArgumentParser(prog="mseg-taxonomy", description=__doc__.split("\n")[0]))
    parser.add_argument("--taxonomy-file", action="append", default=[], metavar="FILE",
                        help="add the taxonomies of a user file first (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list known taxonomies")
    p.add_argument("--role", choices=ROLES)
    p = sub.add_parser("show", help="one dataset's mapping: source class -> universal class")
    p.add_argument("dataset")
    p.add_argument("--kind", choices=("universal", "naive"), default="universal")
    p = sub.add_parser("sets", help="one training dataset's label sets: source class -> the universal classes it may be")
    p.add_argument("dataset")
    p = sub.add_parser("validate", help="validate user taxonomy files")
    p.add_argument("files", nargs="+")
    p = sub.add_parser("export", help="export the whole mapping as CSV or Markdown")
    p.add_argument("--format", choices=("csv", "md"), required=True)
    p.add_argument("-o", "--output", help="file to write (atomically); default stdout")
    p.add_argument("--kind", choices=("universal", "naive"), default="universal")
    sub.add_parser("summary", help="counts, defaults, coverage and the built-in data's validation")
    p = sub.add_parser("propose", help="propose the universal class of each class of a new dataset (name and synonym similarity)")
    p.add_argument("taxonomy", nargs="?", help="the new dataset's taxonomy (default: the one non-universal block of --taxonomy-file)")
    p.add_argument("--universal", default="universal", help="the universal taxonomy to map into (default MSeg's 194 classes)")
    p.add_argument("--out", help="write a train-role taxonomy file with the proposals (DECIDE comments on the rows to review)")
    p.add_argument("--name", help="the taxonomy name in --out (default: the input's name)")
    p = sub.add_parser("import-mseg", help="author taxonomy files from an mseg-api data folder")
    p.add_argument("mseg_data_dir")
    p.add_argument("-o", "--output-dir", required=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("mseg-taxonomy", lambda: _run(args, sys.stdout), args.debug)


def _run(args: argparse.Namespace, out) -> int:
    catalog = Catalog(args.taxonomy_file)
    if catalog.warnings.warnings:
        print(catalog.warnings.format(with_info=False), file=sys.stderr)
    if args.command == "list":
        cmd_list(catalog, args.role, out)
    elif args.command == "show":
        cmd_show(catalog, args.dataset, args.kind, out)
    elif args.command == "sets":
        cmd_sets(catalog, args.dataset, out)
    elif args.command == "validate":
        return cmd_validate(catalog, args.files, out)
    elif args.command == "export":
        text = export_mapping(catalog, args.kind, args.format)
        if args.output:
            atomic_write_text(args.output, text)
            print(f"wrote {args.output}", file=out)
        else:
            out.write(text)
    elif args.command == "summary":
        cmd_summary(catalog, out)
    elif args.command == "import-mseg":
        cmd_import(args.mseg_data_dir, args.output_dir, out)
    elif args.command == "propose":
        return cmd_propose(catalog, args, out)
    return 0


def cmd_propose(catalog: Catalog, args: argparse.Namespace, out) -> int:
    from mseg_semantic.errors import EXIT_CHECKS_FAILED
    from mseg_semantic.taxonomy.propose import format_proposals, proposal_file_text, propose

    name = args.taxonomy
    if name is None:
        candidates = [t.name for path in args.taxonomy_file for t in catalog.validate_file(path)[0] if t.role != "universal"]
        if len(candidates) != 1:
            raise UserError(f"propose: name the taxonomy to map ({', '.join(candidates) or 'no dataset block in --taxonomy-file'}); "
                            f"e.g. mseg-taxonomy --taxonomy-file new.tsv propose NAME")
        name = candidates[0]
    if catalog.taxonomy(args.universal).role != "universal":
        raise UserError(f"--universal {args.universal}: not a universal taxonomy; e.g. universal")
    proposals = propose(catalog, name, args.universal)
    out.write(format_proposals(proposals, name, args.universal))
    if args.out:
        atomic_write_text(args.out, proposal_file_text(proposals, catalog.taxonomy(name), args.name or name, args.universal))
        print(f"wrote {args.out}", file=out)
    return 0 if all(p.confident for p in proposals) else EXIT_CHECKS_FAILED


def _converters(catalog: Catalog, kind: str) -> list:
    names = catalog.taxonomy_names()
    if kind == "naive":
        return [NaiveTaxonomyConverter(catalog=catalog)]
    # one converter per universal taxonomy, with every train/test dataset that maps to it
    convs = []
    for uni in catalog.taxonomy_names("universal"):
        train = [n for n in names if catalog.taxonomy(n).role == "train" and catalog.taxonomy(n).maps_to == uni]
        test = [n for n in names if catalog.taxonomy(n).role == "test" and catalog.taxonomy(n).maps_to == uni]
        convs.append(TaxonomyConverter(train, test, universal=uni, catalog=catalog))
    return convs


def cmd_list(catalog: Catalog, role: str | None, out) -> None:
    rows = [("name", "role", "classes", "maps_to", "default")]
    for name in catalog.taxonomy_names(role):
        tax = catalog.taxonomy(name)
        default = ("train" if name in DEFAULT_TRAIN_DATASETS else "test" if name in DEFAULT_TEST_DATASETS else "")
        rows.append((name, tax.role, str(tax.num_classes), tax.maps_to if tax.role in ("train", "test") else "",
                     default))
    _print_table(rows, out)


def cmd_show(catalog: Catalog, dataset: str, kind: str, out) -> None:
    tax = catalog.taxonomy(dataset)
    print(f"{dataset}: role {tax.role}, {tax.num_classes} classes, source {tax.source}", file=out)
    if kind == "naive":
        if tax.role not in ("train", "test"):
            raise CliError(f"{dataset!r} has role {tax.role!r}; the naive mapping exists for train/test datasets")
        conv = NaiveTaxonomyConverter(test_datasets=[dataset] if tax.role == "test" else DEFAULT_TEST_DATASETS,
                                      train_datasets=UNRELABELED_TRAIN_DATASETS, catalog=catalog)
        names = conv.class_names
        if tax.role == "train" and dataset in conv.label_maps:
            rows = [("id", "class", "naive_id", "naive_class")]
            rows += [(str(i), c, str(conv.label_maps[dataset][i]), names[conv.label_maps[dataset][i]])
                     for i, c in enumerate(tax.class_names)]
        elif tax.role == "train":
            raise CliError(f"{dataset!r} is not one of the naive taxonomy's training datasets "
                           f"({', '.join(UNRELABELED_TRAIN_DATASETS)})")
        else:
            matrix = conv.test_projection_matrix(dataset)
            rows = [("id", "test_class", "naive_ids", "naive_classes")]
            for i, c in enumerate(tax.class_names):
                uids = [int(u) for u in matrix[i].nonzero().flatten()]
                rows.append((str(i), c, " ".join(map(str, uids)), ", ".join(names[u] for u in uids)))
        _print_table(rows, out)
        return
    if tax.role == "universal":
        rows = [("id", "class", "parent", "wordnet")]
        rows += [(str(i), c, tax.extra.get("parent", [""] * tax.num_classes)[i],
                  tax.extra.get("wordnet", [""] * tax.num_classes)[i]) for i, c in enumerate(tax.class_names)]
    elif tax.role == "raw":
        rows = [("id", "class")] + [(str(i), c) for i, c in enumerate(tax.class_names)]
    else:
        uni = TaxonomyConverter([], [], universal=tax.maps_to, catalog=catalog)
        if tax.role == "train":
            rows = [("id", "class", "universal_id", "universal_class", "label_set")]
            for i, c in enumerate(tax.class_names):
                uid = uni.name_to_id[tax.universal[i][0]]
                label_set = f"{len(tax.universal[i])} classes" if tax.is_set_valued(i) else ""
                rows.append((str(i), c, str(uid), uni.id_to_name[uid], label_set))
            set_valued = sum(tax.is_set_valued(i) for i in range(tax.num_classes))
            if set_valued:
                _print_table(rows, out)
                print(f"{set_valued} set-valued class(es): universal_class is the one-hot target; partial-label training "
                      f"accepts any class of the set (mseg-taxonomy sets {dataset})", file=out)
                return
        else:
            rows = [("id", "test_class", "universal_ids", "universal_classes")]
            for i, c in enumerate(tax.class_names):
                uids = sorted(uni.name_to_id[u] for u in tax.universal[i])
                rows.append((str(i), c, " ".join(map(str, uids)), ", ".join(uni.id_to_name[u] for u in uids)))
    _print_table(rows, out)


def cmd_sets(catalog: Catalog, dataset: str, out) -> None:
    """Each source class with its label set (first: the one-hot target)."""
    tax = catalog.taxonomy(dataset)
    if tax.role != "train":
        valid = ", ".join(catalog.taxonomy_names("train"))
        raise CliError(f"{dataset!r} has role {tax.role!r}; label sets belong to training taxonomies: {valid}")
    from mseg_semantic.taxonomy.label_set_rule import evidence_of

    conv = TaxonomyConverter([dataset], [], catalog=catalog)
    sets = conv.class_sets[dataset]
    set_valued = [i for i in range(tax.num_classes) if tax.is_set_valued(i)]
    with_evidence = {r.class_name for r in evidence_of(dataset)}
    shown = [i for i in range(tax.num_classes) if i in set_valued or tax.class_names[i] in with_evidence]
    print(f"{dataset}: {tax.num_classes} classes, {len(set_valued)} with a label set of several universal classes "
          f"(maps to {conv.universal}; first = the one-hot target); the others are classes of one "
          f"(mseg-taxonomy show {dataset})", file=out)
    if shown:
        rows = [("id", "class", "size", "label_set")]
        for i in shown:
            members = ", ".join(conv.id_to_name[u] for u in sets[i]) if sets[i] else f"unlabeled ({IGNORE_INDEX})"
            rows.append((str(i), tax.class_names[i], str(len(sets[i])), members))
        _print_table(rows, out)
    _print_set_evidence(tax, out)


def _print_set_evidence(tax, out) -> None:
    """Why each member is in its class's set, or not: the rows of the shipped evidence table."""
    from mseg_semantic.taxonomy.label_set_rule import EVIDENCE_PATH, evidence_of

    evidence = evidence_of(tax.name)
    if not evidence:
        if any(tax.is_set_valued(i) for i in range(tax.num_classes)):
            print(f"\nno relabeling-record evidence for {tax.name}: its sets are as its taxonomy file writes them", file=out)
        return
    print(f"\nwhy (MSeg's train-split relabeling records, {EVIDENCE_PATH.parent.name}/{EVIDENCE_PATH.name}; share = of the "
          "class's train segments moved to a class; the rule: docs/taxonomy.md):", file=out)
    rows = [("class", "member", "train", "share", "val", "set", "why")]
    differs = []
    for cls in dict.fromkeys(r.class_name for r in evidence):
        class_rows = [r for r in evidence if r.class_name == cls]
        rows += [(cls, r.member, str(r.train_segments), "-" if r.share is None else f"{r.share:.1%}",
                  str(r.val_segments), "kept" if r.kept else "dropped", r.reason) for r in class_rows]
        if cls in tax.class_names and {r.member for r in class_rows if r.kept} != set(tax.universal[tax.class_names.index(cls)]):
            differs.append(cls)
    _print_table(rows, out)
    if differs:
        print(f"note: the sets of {', '.join(map(repr, differs))} differ from this evidence (edited taxonomy data?)", file=out)


def cmd_validate(catalog: Catalog, files: list[str], out) -> int:
    report = ValidationReport()
    for path in files:
        blocks, file_report = catalog.validate_file(path)
        report.extend(file_report)
        for tax in blocks:
            print(f"{path}: {tax.name} ({tax.role}, {tax.num_classes} classes)", file=out)
    if report.errors:
        print(report.format(), file=sys.stderr)
        return 2
    print(report.format(), file=out)
    return 0


def export_mapping(catalog: Catalog, kind: str, fmt: str) -> str:
    """Long table: one row per (dataset class, model class) pair; a test class fed by nothing gets one empty row."""
    header = ["taxonomy", "role", "class_id", "class_name", "model_id", "model_class"]
    rows = []
    for conv in _converters(catalog, kind):
        for d in conv.train_datasets:
            for i, c in enumerate(conv.dataset_class_names[d]):
                uid = conv.label_maps[d][i]
                rows.append([d, "train", i, c, uid, conv.id_to_name[uid]])
        for d in conv.test_datasets:
            matrix = conv.test_projection_matrix(d)
            for i, c in enumerate(conv.dataset_class_names[d]):
                uids = [int(u) for u in matrix[i].nonzero().flatten()]
                for uid in uids or [None]:
                    rows.append([d, "test", i, c, "" if uid is None else uid,
                                 "" if uid is None else conv.id_to_name[uid]])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue()
    lines = []
    current = None
    for row in rows:
        if row[0] != current:
            current = row[0]
            lines += ["", f"## {current} ({row[1]})", "", "| id | class | model id | model class |",
                      "| ---: | --- | ---: | --- |"]
        lines.append(f"| {row[2]} | {_md(row[3])} | {row[4]} | {_md(row[5])} |")
    title = "MSeg universal taxonomy mapping" if kind == "universal" else "Naive taxonomy mapping"
    return f"# {title}\n" + "\n".join(lines) + "\n"


def _md(text) -> str:
    return str(text).replace("|", "\\|")


def cmd_summary(catalog: Catalog, out) -> None:
    conv = TaxonomyConverter(catalog=catalog)
    naive = NaiveTaxonomyConverter(catalog=catalog)
    print(f"universal classes: {conv.num_classes} (ignore id {IGNORE_INDEX})", file=out)
    print(f"naive taxonomy: {len(naive.id_to_name) - 1} classes, {naive.num_classes} logits", file=out)
    print(f"default training datasets ({len(DEFAULT_TRAIN_DATASETS)}):", file=out)
    for d in DEFAULT_TRAIN_DATASETS:
        print(f"  {d:30s} {len(conv.dataset_class_names[d]):4d} classes -> "
              f"{len(conv.dataset_universal_ids(d)):4d} universal", file=out)
    print(f"default test datasets ({len(DEFAULT_TEST_DATASETS)}):", file=out)
    for d in DEFAULT_TEST_DATASETS:
        print(f"  {d:30s} {len(conv.dataset_class_names[d]):4d} classes <- "
              f"{len(conv.dataset_universal_ids(d)):4d} universal", file=out)
    print(f"universal classes no default training dataset supplies: {len(conv.unsupplied_uids)}", file=out)
    sets = TaxonomyConverter(UNRELABELED_TRAIN_DATASETS, [], set_valued=True, catalog=catalog).label_sets
    set_valued = {d: sum(catalog.taxonomy(d).is_set_valued(i) for i in range(catalog.taxonomy(d).num_classes))
                  for d in DEFAULT_TRAIN_DATASETS}
    print(f"set-valued training classes (partial-label training): {sum(set_valued.values())} in "
          f"{sum(1 for n in set_valued.values() if n)} datasets; the unrelabeled datasets have {len(sets.set_codes)} "
          f"distinct sets of up to {sets.max_set_size} classes", file=out)
    report = validate_taxonomies(list(catalog.all_taxonomies().values()))
    print(f"validation of all known taxonomy data: {len(report.errors)} error(s), "
          f"{len(report.warnings)} warning(s), {len(report.infos)} info (label sets that share classes within a "
          "dataset, as they may: mseg-taxonomy sets DATASET)", file=out)
    for problem in report.errors + report.warnings:
        print(f"  {problem}", file=out)


def cmd_import(data_dir: str, out_dir: str, out) -> None:
    from pathlib import Path

    from mseg_semantic.taxonomy.label_set_rule import EVIDENCE_PATH, write_evidence
    from mseg_semantic.taxonomy.mseg_import import DATA_HEADER, import_mseg_with_evidence, write_taxonomy_files

    taxonomies, evidence, report = import_mseg_with_evidence(data_dir)
    report.extend(validate_taxonomies(taxonomies))
    if report.errors:
        raise TaxonomyFileError(report)
    for path in write_taxonomy_files(taxonomies, out_dir, DATA_HEADER):
        print(f"wrote {path}", file=out)
    if evidence:  # beside the taxonomy files, where the tools read the shipped one
        path = Path(out_dir) / EVIDENCE_PATH.parent.name / EVIDENCE_PATH.name
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"wrote {write_evidence(evidence, path)}", file=out)
    print(report.format(), file=out)


def _print_table(rows, out) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)


if __name__ == "__main__":
    sys.exit(main())
