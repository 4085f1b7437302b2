"""DICOM header rules, in one place: which files are 2D mammograms, and what their headers say.

Pure functions of a pydicom dataset (read with or without its pixels). The image reader
(`imaging`) and the manifest builder (`dicom_manifest`) both ask here, so a file is the same
image, of the same breast and view, whichever of them reads it.

  refusal(ds)          why a file is not a 2D FOR PRESENTATION mammogram with pixels, or None
  excluded_view(ds)    the work-up category of a spot-compression, magnification or
                       implant-displaced view (left out of bags by default), or None
  laterality(ds)       Image Laterality, else Laterality: "L", "R" or None
  view_position(ds)    View Position, else the View Code Sequence's meaning (CID 4014): "CC",
                       "MLO", ... or ""
  pixel_spacing_mm(ds) the row spacing at the detector (Imager Pixel Spacing, else Pixel
                       Spacing), or None
"""

from __future__ import annotations

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Tomosynthesis volumes and their projection images are 3D acquisitions, not 2D mammograms.
TOMOSYNTHESIS_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}
# View modifiers (DICOM CID 4015) that mark a diagnostic work-up view, not a screening view:
# spot compression and magnification show a small region enlarged, and implant-displaced
# (Eklund) views show the breast pushed off its implant, so neither matches the screening views
# a model is trained on. SNOMED CT codes, plus DCM 111136 "Spot magnification view(s)".
EXCLUDED_MODIFIER_CODES = {
    "399055006": "spot compression",
    "399163009": "magnification",
    "399209000": "implant displaced",
    "111136": "spot compression",
}
# Older files carry retired SNOMED-RT codes; their code meanings still say what they are.
EXCLUDED_MODIFIER_WORDS = (
    ("spot", "spot compression"),
    ("magnif", "magnification"),
    ("implant displaced", "implant displaced"),
)
# When View Position is empty: the View Code Sequence's meaning (DICOM CID 4014).
VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
}


def _text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def is_image_object(ds) -> bool:
    """An object with an image (Rows), not a DICOMDIR."""
    return _text(ds, "SOPClassUID") != DICOMDIR_SOP_CLASS and "Rows" in ds


def for_processing(ds) -> bool:
    """Raw detector data ("FOR PROCESSING"), which the encoders are not made for."""
    return (_text(ds, "PresentationIntentType").upper() == "FOR PROCESSING"
            or _text(ds, "SOPClassUID") == MG_FOR_PROCESSING)


def refusal(ds) -> str | None:
    """Why `ds` is not a 2D FOR PRESENTATION mammogram with one frame of pixels; None if it is.

    Needs the pixel data only to say whether there is any (`"PixelData" in ds`).
    """
    sop_class = _text(ds, "SOPClassUID")
    if sop_class in TOMOSYNTHESIS_SOP_CLASSES:
        return (f"breast tomosynthesis object ({TOMOSYNTHESIS_SOP_CLASSES[sop_class]}, "
                f"SOP class {sop_class}); only 2D mammograms are read")
    modality = ds.get("Modality", None)
    if modality != "MG":
        return f"Modality is {modality!r}; expected 'MG' (mammography)"
    if for_processing(ds):
        return "'FOR PROCESSING' image (raw detector data); expected the 'FOR PRESENTATION' image"
    if "PixelData" not in ds:
        return "no Pixel Data element (a header-only or truncated file)"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return f"{frames} frames; expected one 2D mammogram"
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"Photometric Interpretation {photometric!r}; expected MONOCHROME1 or 2"
    return None


def implant_displaced_code(view: str | None) -> bool:
    """ACR view labels append "ID" for implant-displaced views: CCID, MLOID, MLID, ..."""
    return view is not None and len(view) > 2 and view.strip().upper().endswith("ID")


def _modifier_items(ds) -> list:
    """View Modifier Code Sequence items, nested in View Code Sequence or at top level."""
    items = list(ds.get("ViewModifierCodeSequence", None) or [])
    for view_item in ds.get("ViewCodeSequence", None) or []:
        items.extend(view_item.get("ViewModifierCodeSequence", None) or [])
    return items


def excluded_view(ds) -> str | None:
    """"spot compression", "magnification" or "implant displaced" for a work-up view, else None.

    From the view modifiers (codes, else their meanings) and the View Position's "ID" suffix.
    """
    for item in _modifier_items(ds):
        code = str(item.get("CodeValue", "") or "").strip()
        if code in EXCLUDED_MODIFIER_CODES:
            return EXCLUDED_MODIFIER_CODES[code]
        meaning = str(item.get("CodeMeaning", "") or "").lower()
        for word, reason in EXCLUDED_MODIFIER_WORDS:
            if word in meaning:
                return reason
    if implant_displaced_code(_text(ds, "ViewPosition") or None):
        return "implant displaced"
    return None


def laterality(ds) -> str | None:
    """Image Laterality (0020,0062) describes this image, Laterality (0020,0060) the series:
    the first that is L or R, else None."""
    for keyword in ("ImageLaterality", "Laterality"):
        text = _text(ds, keyword).upper()
        if text in ("L", "R"):
            return text
    return None


def laterality_text(ds) -> str:
    """What the laterality tags hold (Image Laterality, else Laterality), upper-case, for
    messages about a file whose laterality is not L or R."""
    return (_text(ds, "ImageLaterality") or _text(ds, "Laterality")).upper()


def view_position(ds) -> str:
    """View Position, else the View Code Sequence's meaning: "CC", "MLO", ..., or ""."""
    view = _text(ds, "ViewPosition").upper()
    if not view:
        for item in ds.get("ViewCodeSequence", []) or []:
            view = VIEW_MEANINGS.get(str(item.get("CodeMeaning", "")).strip().lower(), "")
    return view


def pixel_spacing_mm(ds) -> float | None:
    """Imager Pixel Spacing is at the detector and present in every MG image; Pixel Spacing,
    when a vendor adds it, may be calibrated to another plane, so it only fills a gap."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword, None)
        if value:
            row = float(value[0])
            if row > 0:
                return row
    return None
