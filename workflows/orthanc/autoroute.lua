-- Orthanc auto-routing to medseg's DICOM node: every MR series, once stable, goes to the modality
-- "medseg" (declared in Orthanc's "DicomModalities"). Load it with "LuaScripts": ["autoroute.lua"].
-- The node's results (SEG, RTSTRUCT series) become stable too and are not sent back: not MR.
-- Checked by tests/node/test_orthanc.py (workflows/orthanc/node_forward.py).
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'MR' then
    RestApiPost('/modalities/medseg/store', seriesId, true)
  end
end
